//! Shared command line for the examples: where to listen.

use std::net::SocketAddr;
use std::path::PathBuf;

use extproc::Server;

/// Where the example processor listens.
#[derive(Debug, clap::Args)]
pub struct Listen {
    /// TCP port on 127.0.0.1.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Listen address (overrides --port).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Serve on this Unix socket instead of TCP.
    #[arg(long)]
    pub unix: Option<PathBuf>,
}

impl Listen {
    /// Serves until SIGTERM / ctrl-c.
    pub async fn serve(self, server: Server) -> anyhow::Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .init();
        if let Some(path) = self.unix {
            tracing::info!(path = %path.display(), "serving on unix socket");
            server.serve_unix(path, extproc::shutdown_signal()).await?;
        } else {
            let addr = self
                .addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)));
            tracing::info!(%addr, "serving");
            server.serve(addr).await?;
        }
        Ok(())
    }
}
