//! `extproxy demo` in-process on port-0 addresses: the processor's headers reach the upstream
//! and the client.
#![allow(clippy::unwrap_used)]

use extproxy::demo::Demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_the_add_headers_effect() {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let demo = Demo::start(any, any, 1).await.expect("demo starts");
    assert_ne!(demo.listener.port(), 0);
    assert_ne!(demo.admin.port(), 0);
    let (response, upstream) = demo.probe().await.expect("probe");
    assert_eq!(upstream.as_deref(), Some("hello-to-asm"));
    assert_eq!(response.as_deref(), Some("hello-from-asm"));
    // A real client through the proxy: HTTP/2 too.
    let resp = testenv::TestRequest::get("/x")
        .send(demo.listener, testenv::HttpVersion::Http2)
        .await
        .unwrap();
    assert_eq!(resp.header("x-ext-proc-header"), Some("hello-from-asm"));
    assert_eq!(
        resp.json()["headers"]["x-ext-proc-header"][0],
        "hello-to-asm"
    );
    demo.stop().await;
}
