//! The gRPC server over real loopback sockets: health, message-size limit, isolation of bad
//! streams, Unix sockets, TLS and mTLS, graceful shutdown.

use std::time::Duration;

use extproc::demo::{AddHeaders, TcpInspect};
use extproc::pb::envoy::service::ext_proc::v3 as ep;
use extproc::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use extproc::pb::envoy::service::network_ext_proc::v3 as np;
use extproc::pb::envoy::service::network_ext_proc::v3::network_external_processor_client::NetworkExternalProcessorClient;
use extproc::server::{HTTP_SERVICE_NAME, NETWORK_SERVICE_NAME};
use extproc::{Server, ServerHandle, TlsConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const CA: &str = include_str!("certs/ca.pem");
const SERVER_CERT: &str = include_str!("certs/server.pem");
const SERVER_KEY: &str = include_str!("certs/server.key");
const CLIENT_CERT: &str = include_str!("certs/client.pem");
const CLIENT_KEY: &str = include_str!("certs/client.key");

async fn spawn(server: Server) -> ServerHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    server.spawn(listener).expect("spawn")
}

async fn channel(handle: &ServerHandle) -> Channel {
    Endpoint::from_shared(format!("http://{}", handle.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// An open HTTP ext_proc stream: send requests, read responses.
struct Stream {
    tx: mpsc::Sender<ep::ProcessingRequest>,
    rx: tonic::Streaming<ep::ProcessingResponse>,
}

impl Stream {
    async fn open(ch: Channel) -> Stream {
        let (tx, in_rx) = mpsc::channel(8);
        let mut client = ExternalProcessorClient::new(ch);
        let rx = client
            .process(ReceiverStream::new(in_rx))
            .await
            .expect("open stream")
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&mut self, req: ep::ProcessingRequest) {
        self.tx.send(req).await.expect("send");
    }

    async fn next(&mut self) -> Result<Option<ep::ProcessingResponse>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("reply in time")
    }
}

fn request_headers() -> ep::ProcessingRequest {
    ep::ProcessingRequest {
        request: Some(ep::processing_request::Request::RequestHeaders(
            ep::HttpHeaders {
                end_of_stream: true,
                ..Default::default()
            },
        )),
        protocol_config: Some(ep::ProtocolConfiguration::default()),
        ..Default::default()
    }
}

async fn assert_add_headers_works(ch: Channel) {
    let mut s = Stream::open(ch).await;
    s.send(request_headers()).await;
    let r = s.next().await.expect("ok").expect("a reply");
    assert!(
        matches!(
            r.response,
            Some(ep::processing_response::Response::RequestHeaders(_))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn health_reports_serving_for_registered_services() {
    let inspect = TcpInspect::new(|_: &[u8]| false);
    let h = spawn(
        Server::new()
            .http(AddHeaders::default)
            .network(move || inspect.clone()),
    )
    .await;
    let mut health = HealthClient::new(channel(&h).await);
    for name in ["", HTTP_SERVICE_NAME, NETWORK_SERVICE_NAME] {
        let resp = health
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .expect("check");
        assert_eq!(
            resp.into_inner().status,
            ServingStatus::Serving as i32,
            "{name:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_eq!(unknown.map_err(|s| s.code()).err(), Some(Code::NotFound));
    h.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn oversized_message_ends_only_its_stream_with_out_of_range() {
    let h = spawn(
        Server::new()
            .http(AddHeaders::default)
            .max_message_size(64 * 1024),
    )
    .await;
    let ch = channel(&h).await;
    let mut good = Stream::open(ch.clone()).await;
    let mut bad = Stream::open(ch.clone()).await;
    bad.send(ep::ProcessingRequest {
        request: Some(ep::processing_request::Request::RequestBody(ep::HttpBody {
            body: vec![b'x'; 200 * 1024],
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    })
    .await;
    let err = bad.next().await.expect_err("too large");
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    // The other stream on the same connection, and new streams, still work.
    good.send(request_headers()).await;
    assert!(good.next().await.expect("ok").is_some());
    assert_add_headers_works(ch).await;
    assert_eq!(h.stats().errors, 1);
}

#[tokio::test]
async fn malformed_stream_does_not_disturb_others() {
    let h = spawn(Server::new().http(AddHeaders::default)).await;
    let ch = channel(&h).await;
    let mut bad = Stream::open(ch.clone()).await;
    bad.send(ep::ProcessingRequest::default()).await;
    assert_eq!(
        bad.next().await.expect_err("empty message").code(),
        Code::InvalidArgument
    );
    let mut twice = Stream::open(ch.clone()).await;
    twice.send(request_headers()).await;
    assert!(twice.next().await.expect("first ok").is_some());
    twice.send(request_headers()).await;
    assert_eq!(
        twice.next().await.expect_err("out of order").code(),
        Code::FailedPrecondition
    );
    assert_add_headers_works(ch).await;
    let stats = h.stats();
    assert_eq!((stats.errors, stats.streams_started), (2, 3));
}

#[tokio::test]
async fn network_service_pass_through_over_grpc() {
    let inspect = TcpInspect::new(|l: &[u8]| l == b"deny");
    let h = spawn(Server::new().network(move || inspect.clone())).await;
    let (tx, in_rx) = mpsc::channel(8);
    let mut client = NetworkExternalProcessorClient::new(channel(&h).await);
    let mut rx = client
        .process(ReceiverStream::new(in_rx))
        .await
        .expect("open")
        .into_inner();
    let data = |d: &[u8], eos| {
        Some(np::Data {
            data: d.to_vec(),
            end_of_stream: eos,
        })
    };
    tx.send(np::ProcessingRequest {
        read_data: data(b"ok\n", false),
        ..Default::default()
    })
    .await
    .expect("send");
    let r = rx.message().await.expect("ok").expect("reply");
    assert_eq!(r.read_data, data(b"ok\n", false));
    tx.send(np::ProcessingRequest {
        write_data: data(b"", true),
        ..Default::default()
    })
    .await
    .expect("send");
    let r = rx.message().await.expect("ok").expect("reply");
    assert_eq!(r.write_data, data(b"", true), "bare FIN answered with eos");
}

#[cfg(unix)]
#[tokio::test]
async fn serves_on_a_unix_socket() {
    let dir = testenv::TempDir::new("extproc-uds").expect("tempdir");
    let path = dir.join("proc.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::new().http(AddHeaders::default);
    let serve_path = path.clone();
    let task = tokio::spawn(async move {
        server
            .serve_unix(&serve_path, async {
                let _ = stop_rx.await;
            })
            .await
    });
    let connect_path = path.clone();
    let ch = loop {
        let p = connect_path.clone();
        let attempt = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await;
        match attempt {
            Ok(ch) => break ch,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_add_headers_works(ch).await;
    let _ = stop_tx.send(());
    task.await.expect("join").expect("served cleanly");
    assert!(!path.exists(), "socket file removed on shutdown");
}

fn tls_endpoint(h: &ServerHandle, client_identity: bool) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(CA))
        .domain_name("localhost");
    if client_identity {
        tls = tls.identity(Identity::from_pem(CLIENT_CERT, CLIENT_KEY));
    }
    Endpoint::from_shared(format!("https://{}", h.addr()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let h = spawn(
        Server::new()
            .http(AddHeaders::default)
            .tls(TlsConfig::new(SERVER_CERT, SERVER_KEY)),
    )
    .await;
    assert_add_headers_works(
        tls_endpoint(&h, false)
            .connect()
            .await
            .expect("tls connect"),
    )
    .await;
    // Plaintext against a TLS server fails.
    let plain = Endpoint::from_shared(format!("http://{}", h.addr()))
        .expect("uri")
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut client = ExternalProcessorClient::new(ch);
        let (_tx, in_rx) = mpsc::channel::<ep::ProcessingRequest>(1);
        assert!(client.process(ReceiverStream::new(in_rx)).await.is_err());
    }

    let mtls = spawn(
        Server::new()
            .http(AddHeaders::default)
            .tls(TlsConfig::new(SERVER_CERT, SERVER_KEY).client_ca(CA)),
    )
    .await;
    assert_add_headers_works(
        tls_endpoint(&mtls, true)
            .connect()
            .await
            .expect("mtls connect"),
    )
    .await;
    // Without a client certificate the handshake (or the first call) is refused.
    match tls_endpoint(&mtls, false).connect().await {
        Err(_) => {}
        Ok(ch) => {
            let mut client = ExternalProcessorClient::new(ch);
            let (_tx, in_rx) = mpsc::channel::<ep::ProcessingRequest>(1);
            assert!(
                client.process(ReceiverStream::new(in_rx)).await.is_err(),
                "mTLS must require a client cert"
            );
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_waits_for_in_flight_streams() {
    let h = spawn(Server::new().http(AddHeaders::default)).await;
    let mut s = Stream::open(channel(&h).await).await;
    s.send(request_headers()).await;
    assert!(s.next().await.expect("ok").is_some());
    let shutdown = tokio::spawn(h.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "an open stream keeps the server draining"
    );
    // Envoy-side half-close: the driver ends, the stream completes, the server stops.
    let Stream { tx, mut rx } = s;
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), rx.message())
        .await
        .expect("in time");
    assert!(end.expect("clean end").is_none());
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown completes")
        .expect("join")
        .expect("clean");
}

#[tokio::test]
async fn serve_without_processor_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = Server::new()
        .serve_with_listener(listener, async {})
        .await
        .expect_err("nothing to serve");
    assert!(matches!(err, extproc::ServeError::NoProcessor));
}

/// The server offers 256 KiB HTTP/2 frames, so a proxy's large body chunks need few frames.
#[tokio::test]
async fn server_offers_large_http2_frames() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = spawn(Server::new().http(AddHeaders::default)).await;
    let mut s = tokio::net::TcpStream::connect(h.addr())
        .await
        .expect("connect");
    // Client preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("write");
    // The server's first frame is its SETTINGS: 9-byte header, then 6-byte entries.
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("settings header");
    assert_eq!(head[3], 0x4, "first frame is SETTINGS");
    let len = usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("settings body");
    let max_frame = body.chunks(6).find_map(|e| {
        (u16::from_be_bytes([e[0], e[1]]) == 0x5)
            .then(|| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
    });
    assert_eq!(max_frame, Some(extproc::server::MAX_FRAME_SIZE));
    assert_eq!(extproc::server::MAX_FRAME_SIZE, 256 * 1024);
}
