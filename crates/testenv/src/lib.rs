//! Test support for extproxy and the `extproc` SDK.
//!
//! Every test that needs a proxy, an upstream or a client builds it from here, so the tests read
//! like the behaviour they check:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use testenv::{echo_http_upstream, render, ProxyProcess, TestRequest, HttpVersion};
//!
//! let upstream = echo_http_upstream().await;
//! # let template = "";
//! // `template` is an Envoy bootstrap with `{{UPSTREAM_PORT}}` in its upstream cluster.
//! let yaml = render(template, &[("UPSTREAM_PORT", &upstream.addr().port().to_string())]);
//! let proxy = ProxyProcess::envoy(&yaml).await?;
//! let addr = proxy.listener_addr("ingress").await;
//! let resp = TestRequest::get("/hello").send(addr, HttpVersion::Http1).await?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`envoy`]: [`envoy_binary`] finds (or installs, under a cross-process lock) Envoy 1.40.
//! - [`process`]: [`ProxyProcess`] runs Envoy, or any binary that accepts Envoy's flags, from a
//!   YAML string, and reads its admin endpoint (`/ready`, `/listeners`, `/stats`).
//! - [`upstream`]: loopback servers: [`echo_http_upstream`], [`tcp_echo_upstream`],
//!   [`tcp_recording_upstream`].
//! - [`client`]: a small HTTP/1.1 and HTTP/2 (prior knowledge) client, [`TestRequest`].
//! - [`template`]: [`render`] fills `{{KEY}}` placeholders in YAML templates.
//! - [`tempdir`]: [`TempDir`], a directory removed on drop.

pub mod client;
pub mod envoy;
pub mod process;
pub mod tempdir;
pub mod template;
pub mod upstream;

pub use client::{HttpVersion, TestRequest, TestResponse};
pub use envoy::{envoy_binary, workspace_root, ENVOY_EXTRA_ARGS, ENVOY_VERSION};
pub use process::ProxyProcess;
pub use tempdir::TempDir;
pub use template::render;
pub use upstream::{
    echo_http_upstream, tcp_echo_upstream, tcp_recording_upstream, CloseKind, EchoHttpUpstream,
    RecordedConnection, RecordedRequest, TcpEchoUpstream, TcpRecordingUpstream,
};
