//! The `socket-identity` binary: parse the config, set up logging, bind, run until a signal.

use std::{
    io::IsTerminal,
    net::{SocketAddr, TcpListener},
};

use anyhow::Context;
use clap::Parser;
use socket_identity::{Config, run, shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,socketioxide=warn,engineioxide=warn,fred=warn".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = Config::parse();
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    run(config, listener, shutdown::signal()).await?;
    Ok(())
}
