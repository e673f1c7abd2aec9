//! Serving processors over gRPC: TCP or Unix socket, health, TLS, graceful shutdown, counters.
//!
//! ```no_run
//! use extproc::{demo::AddHeaders, Server};
//!
//! # async fn run() -> Result<(), extproc::ServeError> {
//! Server::new()
//!     .http(AddHeaders::default)
//!     .serve("127.0.0.1:50051".parse().expect("addr")) // until SIGTERM or ctrl-c
//!     .await
//! # }
//! ```
//!
//! Tests bind port 0 themselves and hand the listener over ([`Server::spawn`] or
//! [`Server::serve_with_listener`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batched_writes::BatchedWrites;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::http::service::HttpService;
use crate::network::service::NetworkService;
use crate::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use crate::pb::envoy::service::network_ext_proc::v3::network_external_processor_server::NetworkExternalProcessorServer;
use crate::stream::{Stats, StatsSnapshot};
use crate::{HttpProcessor, NetworkProcessor};

/// The largest HTTP/2 frame the server accepts (`SETTINGS_MAX_FRAME_SIZE`).
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// gRPC service name of HTTP ext_proc (also its health-check name).
pub const HTTP_SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// gRPC service name of network ext_proc (also its health-check name).
pub const NETWORK_SERVICE_NAME: &str = "envoy.service.network_ext_proc.v3.NetworkExternalProcessor";
/// Default limit for one incoming gRPC message (tonic's default): 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Neither [`Server::http`] nor [`Server::network`] was called.
    #[error("no processor registered: call Server::http and/or Server::network")]
    NoProcessor,
    /// Binding or preparing the socket failed.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS configuration was rejected.
    #[error("invalid TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    /// The gRPC server failed.
    #[error("gRPC server error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// TLS for the gRPC server (rustls): a certificate chain and key, and optionally a client CA to
/// require client certificates (mTLS).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    cert_pem: Vec<u8>,
    /// PEM private key.
    key_pem: Vec<u8>,
    /// PEM CA bundle for client certificates; `None` = no client auth.
    client_ca_pem: Option<Vec<u8>>,
}

impl TlsConfig {
    /// Server certificate chain and private key, both PEM.
    pub fn new(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> TlsConfig {
        TlsConfig {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
        }
    }

    /// Reads the certificate chain and key from PEM files.
    pub fn from_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> std::io::Result<TlsConfig> {
        Ok(TlsConfig::new(std::fs::read(cert)?, std::fs::read(key)?))
    }

    /// Require client certificates signed by this CA (PEM).
    pub fn client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> TlsConfig {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    fn to_tonic(&self) -> ServerTlsConfig {
        let mut c =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            c = c.client_ca_root(Certificate::from_pem(ca));
        }
        c
    }
}

/// Registers one service on the routes, given the message size limit and the counters.
type Registration = Box<dyn FnOnce(&mut RoutesBuilder, usize, Arc<Stats>) + Send>;

/// A gRPC server for HTTP and/or network processors.
///
/// Built with [`Server::new`], given processor factories (any `Fn() -> P`, e.g.
/// `MyProcessor::default`), then served with one of the `serve*` methods or [`Server::spawn`].
/// It always serves `grpc.health.v1.Health` (status SERVING for `""` and each registered
/// service, NOT_SERVING once shutdown starts).
pub struct Server {
    /// Services to mount.
    registrations: Vec<Registration>,
    /// Health-check names of the registered services.
    names: Vec<&'static str>,
    /// Counters shared by all streams.
    stats: Arc<Stats>,
    /// Max decoded size of one incoming message.
    max_message_size: usize,
    /// TLS, if enabled.
    tls: Option<TlsConfig>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.names)
            .field("max_message_size", &self.max_message_size)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// An empty server (register processors with [`Server::http`] / [`Server::network`]).
    pub fn new() -> Server {
        Server {
            registrations: Vec::new(),
            names: Vec::new(),
            stats: Arc::new(Stats::default()),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            tls: None,
        }
    }

    /// Serve HTTP ext_proc; `factory` makes one processor per stream (per HTTP request).
    pub fn http<F, P>(mut self, factory: F) -> Server
    where
        F: Fn() -> P + Send + Sync + 'static,
        P: HttpProcessor,
    {
        self.names.push(HTTP_SERVICE_NAME);
        self.registrations.push(Box::new(move |routes, max, stats| {
            let svc = ExternalProcessorServer::new(HttpService::new(factory, stats))
                .max_decoding_message_size(max);
            routes.add_service(svc);
        }));
        self
    }

    /// Serve network ext_proc; `factory` makes one processor per TCP connection.
    pub fn network<F, P>(mut self, factory: F) -> Server
    where
        F: Fn() -> P + Send + Sync + 'static,
        P: NetworkProcessor,
    {
        self.names.push(NETWORK_SERVICE_NAME);
        self.registrations.push(Box::new(move |routes, max, stats| {
            let svc = NetworkExternalProcessorServer::new(NetworkService::new(factory, stats))
                .max_decoding_message_size(max);
            routes.add_service(svc);
        }));
        self
    }

    /// Largest incoming message accepted (default [`DEFAULT_MAX_MESSAGE_SIZE`]); a bigger one
    /// ends its stream with `OUT_OF_RANGE`.
    pub fn max_message_size(mut self, bytes: usize) -> Server {
        self.max_message_size = bytes;
        self
    }

    /// Serve over TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Server {
        self.tls = Some(tls);
        self
    }

    /// The server's counters (live; keep the `Arc` to read them while serving).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serves on `addr` until SIGTERM or ctrl-c, then drains gracefully.
    pub async fn serve(self, addr: SocketAddr) -> Result<(), ServeError> {
        self.serve_with_shutdown(addr, shutdown_signal()).await
    }

    /// Serves on `addr` until `signal` completes, then drains gracefully.
    pub async fn serve_with_shutdown(
        self,
        addr: SocketAddr,
        signal: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen {
                what: addr.to_string(),
                source,
            })?;
        self.serve_with_listener(listener, signal).await
    }

    /// Serves on an already-bound listener (bind `127.0.0.1:0` in tests) until `signal`.
    pub async fn serve_with_listener(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        self.serve_incoming(incoming, signal).await
    }

    /// Serves on a Unix socket at `path` (a stale socket file is replaced) until `signal`.
    #[cfg(unix)]
    pub async fn serve_unix(
        self,
        path: impl AsRef<Path>,
        signal: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let path = path.as_ref();
        let listen_err = |source| ServeError::Listen {
            what: path.display().to_string(),
            source,
        };
        if path.exists() {
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(listen_err)?;
        let _cleanup = RemoveOnDrop(path.to_path_buf());
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        self.serve_incoming(incoming, signal).await
    }

    /// Serves on `listener` in a background task; the handle reports the address and counters
    /// and shuts the server down when told to (or when dropped).
    ///
    /// ```no_run
    /// # async fn t() -> anyhow::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = extproc::Server::new()
    ///     .http(extproc::demo::AddHeaders::default)
    ///     .spawn(listener)?;
    /// println!("processor on {}", server.addr());
    /// server.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn spawn(self, listener: TcpListener) -> Result<ServerHandle, ServeError> {
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            what: "listener".into(),
            source,
        })?;
        let stats = self.stats.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve_with_listener(listener, async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle {
            addr,
            stats,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    async fn serve_incoming<I, IO, IE>(
        self,
        incoming: I,
        signal: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        I: futures_util::Stream<Item = Result<IO, IE>>,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Server {
            registrations,
            names,
            stats,
            max_message_size,
            tls,
        } = self;
        if registrations.is_empty() {
            return Err(ServeError::NoProcessor);
        }
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health);
        for register in registrations {
            register(&mut routes, max_message_size, stats.clone());
        }
        for name in names.iter().copied().chain([""]) {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        // Frames of up to 256 KiB (h2's default is 16 KiB): a proxy that sends large body
        // chunks (extproxy does) sends them in a few frames, so a few writes and reads each.
        let mut builder = tonic::transport::Server::builder().max_frame_size(MAX_FRAME_SIZE);
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.to_tonic())
                .map_err(ServeError::Tls)?;
        }
        let signal = async move {
            signal.await;
            tracing::info!("extproc server shutting down");
            for name in names.iter().copied().chain([""]) {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        };
        let router = builder.add_routes(routes.routes());
        if tls.is_some() {
            // The TLS handshake runs above the socket; it flushes and then waits to read, which
            // `BatchedWrites` would hold back.
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await?;
        } else {
            // The responses of all streams a pass of the connection task serves go out in one
            // write (and one wake-up of the proxy), not one per stream.
            let incoming = futures_util::TryStreamExt::map_ok(incoming, BatchedWrites::new);
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await?;
        }
        Ok(())
    }
}

/// Removes a Unix socket file when serving ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A server running in the background ([`Server::spawn`]).
///
/// Dropping it starts a graceful shutdown without waiting for it.
#[derive(Debug)]
pub struct ServerHandle {
    /// The bound address.
    addr: SocketAddr,
    /// Counters.
    stats: Arc<Stats>,
    /// Fires the shutdown signal.
    shutdown: Option<oneshot::Sender<()>>,
    /// The serving task.
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Shuts down gracefully (in-flight streams finish) and waits for the server to stop.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Completes on SIGTERM or ctrl-c (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
