//! `extproxy demo`: an echo upstream, the SDK's `add_headers` processor and the proxy, in one
//! process (placeholder until the HTTP path lands).

/// Flags of `extproxy demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Proxy listener address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: std::net::SocketAddr,
    /// Admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: std::net::SocketAddr,
}

/// Runs the demo until ctrl-c.
pub async fn run(_args: DemoArgs, _concurrency: usize) -> anyhow::Result<()> {
    anyhow::bail!("the demo needs the HTTP path, which is not implemented yet")
}
